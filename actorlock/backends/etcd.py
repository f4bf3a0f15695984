"""Lease backend on an etcd cluster (docs/etcd.md argues each rule).

Every host incarnation owns one etcd lease with TTL = host_dead, and its
``alive`` key is attached to it; ``renew`` is the keep-alive. A holder entry
is judged dead only when both are true: the server has dropped its
incarnation's lease (the alive key is gone), and this observer has watched
the host's record unchanged for host_dead (the rule every backend obeys,
docs/timing.md). A newer incarnation's entries replace an older one's at
once, because a new incarnation joins only after both held for the old one.

Every write is one etcd txn that compares the mod revision of each record it
read: all-or-nothing, and a late or repeated txn changes nothing. Records
this host wrote or read are cached with their revisions, so an acquisition
or release that nobody raced costs one txn; a stale cache costs a failed
compare whose failure branch reads the current records back.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import anyio
import attrs

from ..clock import host_clock
from ..errors import (
    BackendTimeoutError,
    HostIdInUseError,
    InvalidStateError,
    LockspaceLostError,
    ResourceBusyError,
    StaleLockStateError,
)
from ..model import (
    Holder,
    HostIdentity,
    HostRecord,
    HostState,
    HostView,
    Lease,
    LeaseOwner,
    LeaseRecord,
    LeaseRequest,
)
from .base import BackendCapabilities, HostAdvert
from .etcd_client import EtcdClient, Json, as_int, mod_is, put_op, range_kvs, range_op, value_is
from .etcd_records import (
    KeyLayout,
    alive_incarnation,
    alive_value,
    decode_host,
    decode_record,
    encode_host,
    encode_record,
)
from .liveness import LivenessObserver, wait_for_id_free
from .rules import normalize_requests, plan_acquire, plan_release, plan_transfer

# Compare failures in a row before an operation gives up; each one means
# another host changed a record we read, so this only bites under a storm.
_MAX_RACES = 64


@attrs.frozen
class _Snapshot:
    """Records, host records and alive keys read at one etcd revision."""

    records: Mapping[str, tuple[LeaseRecord | None, int]]
    hosts: Mapping[int, tuple[HostRecord, int]]
    alive: Mapping[int, tuple[str, int]]  # host id -> (incarnation, mod revision)


class EtcdLeaseBackend:
    """One host's handle on an etcd lockspace under ``prefix``."""

    kind = "etcd"
    capabilities = BackendCapabilities()

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        *,
        host_dead: float,
        poll_interval: float = 0.1,
        clock: Callable[[], float] = host_clock,
        io_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.keys = KeyLayout(prefix)
        self._observer = LivenessObserver(host_dead, clock)
        self._host_dead = host_dead
        self._poll = poll_interval
        self._io_timeout = io_timeout
        self._lockspace_id = ""
        self._host: HostIdentity | None = None
        self._incarnation = ""
        self._record: HostRecord | None = None
        self._lease = 0
        self._host_mod = 0
        self._cache: dict[str, tuple[LeaseRecord | None, int]] = {}

    @property
    def lease_id(self) -> int:
        """This incarnation's etcd lease (0 before join)."""
        return self._lease

    @contextmanager
    def _bounded(self, what: str) -> Iterator[None]:
        try:
            with anyio.fail_after(self._io_timeout):
                yield
        except TimeoutError:
            raise BackendTimeoutError(
                f"etcd {what} took longer than io_timeout={self._io_timeout}s"
            ) from None

    # --- lockspace and membership -------------------------------------------------

    async def lockspace_id(self) -> str:
        if not self._lockspace_id:
            key = self.keys.meta_id
            with self._bounded("lockspace id"):
                answer = await self.client.txn(
                    [mod_is(key, 0)], [put_op(key, uuid.uuid4().hex)], [range_op(key)]
                )
                if answer.get("succeeded"):
                    answer = await self.client.txn(success=[range_op(key)])
            (_, value, _mod), *_ = range_kvs(answer["responses"][0])
            self._lockspace_id = f"etcd:{self.keys.root}{value.decode()}"
        return self._lockspace_id

    async def _read_host(self, host_id: int) -> tuple[HostRecord | None, int, str, int]:
        """``(record, mod, alive incarnation, alive mod)`` of one host id."""
        with self._bounded("host read"):
            answer = await self.client.txn(
                success=[range_op(self.keys.host(host_id)), range_op(self.keys.alive(host_id))]
            )
        return self._decode_host_pair(answer["responses"])

    def _decode_host_pair(self, responses: Sequence[Json]) -> tuple[HostRecord | None, int, str, int]:
        hosts, alive = range_kvs(responses[0]), range_kvs(responses[1])
        record, mod = (decode_host(hosts[0][0], hosts[0][1]), hosts[0][2]) if hosts else (None, 0)
        alive_inc, alive_mod = (alive_incarnation(alive[0][1]), alive[0][2]) if alive else ("", 0)
        return record, mod, alive_inc, alive_mod

    async def join(self, host: HostIdentity, incarnation: str, advert: HostAdvert) -> HostRecord | None:
        async def read() -> HostRecord | None:
            return (await self._read_host(host.id))[0]

        previous = await wait_for_id_free(read, incarnation, self._observer, self._poll)
        if previous is not None and previous.incarnation != incarnation:
            await self._wait_lease_gone(host.id, previous)
        record, mod, alive_inc, alive_mod = await self._read_host(host.id)
        if (
            record is not None
            and previous is not None
            and ((record.incarnation, record.counter) != (previous.incarnation, previous.counter))
        ):
            raise HostIdInUseError(f"host id {host.id} changed hands while we joined ({record.incarnation})")
        if alive_inc and alive_inc != incarnation:
            raise HostIdInUseError(f"host id {host.id}: incarnation {alive_inc} still holds its etcd lease")
        counter = record.counter + 1 if record is not None else 1
        new = HostRecord(
            name=host.name,
            id=host.id,
            incarnation=incarnation,
            counter=counter,
            boot_id=advert.boot_id,
            renewed_monotonic=advert.renewed_monotonic,
            peer_endpoint=advert.peer_endpoint,
            public_key=advert.public_key,
        )
        with self._bounded("join"):
            lease = await self.client.grant(max(1, math.ceil(self._host_dead)))
            answer = await self.client.txn(
                [mod_is(self.keys.host(host.id), mod), mod_is(self.keys.alive(host.id), alive_mod)],
                [
                    put_op(self.keys.host(host.id), encode_host(new, lease)),
                    put_op(self.keys.alive(host.id), alive_value(incarnation, lease), lease=lease),
                ],
                [range_op(self.keys.host(host.id)), range_op(self.keys.alive(host.id))],
            )
            host_mod = _revision(answer)
            if not answer.get("succeeded"):
                # A retried request whose first copy landed finds its own write.
                found = range_kvs(answer["responses"][1])
                if not found or found[0][1].decode() != alive_value(incarnation, lease):
                    await self.client.revoke(lease)
                    raise HostIdInUseError(f"host id {host.id} changed hands while we joined")
                host_mod = self._decode_host_pair(answer["responses"])[1]
        self._host, self._incarnation, self._record = host, incarnation, new
        self._lease, self._host_mod = lease, host_mod
        return record if record is not None else previous

    async def _wait_lease_gone(self, host_id: int, previous: HostRecord) -> None:
        """Wait for the server to expire ``previous``'s lease: a takeover never comes earlier."""
        # Its TTL is host_dead from its last keep-alive, which came before the
        # record stopped changing; a leader change may restart that TTL once.
        with anyio.move_on_after(2 * self._host_dead + self._io_timeout):
            while True:
                record, _mod, alive_inc, _alive_mod = await self._read_host(host_id)
                if record is not None and (record.incarnation, record.counter) != (
                    previous.incarnation,
                    previous.counter,
                ):
                    raise HostIdInUseError(f"host id {host_id} is in use by incarnation {record.incarnation}")
                if alive_inc != previous.incarnation:
                    return
                await anyio.sleep(self._poll)
        raise HostIdInUseError(
            f"host id {host_id}: the etcd lease of incarnation {previous.incarnation} has not expired"
        )

    def _me(self) -> HostRecord:
        if self._host is None or self._record is None:
            raise InvalidStateError("backend has not joined the lockspace")
        return self._record

    async def renew(self, advert: HostAdvert) -> HostRecord:
        me = self._me()
        host_key, alive_key = self.keys.host(me.id), self.keys.alive(me.id)
        with self._bounded("renew"):
            for _ in range(_MAX_RACES):
                new = advert.renewal_of(me)
                answer = await self.client.txn(
                    [
                        mod_is(host_key, self._host_mod),
                        value_is(alive_key, alive_value(me.incarnation, self._lease)),
                    ],
                    [put_op(host_key, encode_host(new, self._lease))],
                    [range_op(host_key), range_op(alive_key)],
                    urgent=True,
                )
                if answer.get("succeeded"):
                    # The keep-alive is the renewal the server counts; it
                    # starts after this renewal's start, so the lease
                    # outlives the host's own deadline (docs/etcd.md).
                    if await self.client.keepalive(self._lease) <= 0:
                        raise LockspaceLostError(f"the etcd lease of host {me.name} expired")
                    self._record, self._host_mod = new, _revision(answer)
                    return new
                record, mod, alive_inc, alive_mod = self._decode_host_pair(answer["responses"])
                if record is None or record.incarnation != me.incarnation:
                    found = record.incarnation if record is not None else "nobody"
                    raise InvalidStateError(f"host id {me.id} was taken over by incarnation {found}")
                me, self._record, self._host_mod = record, record, mod
                if alive_inc != me.incarnation:
                    await self._regain(me, mod, alive_mod)
                elif range_kvs(answer["responses"][1])[0][1].decode() != alive_value(
                    me.incarnation, self._lease
                ):
                    # Same incarnation, another lease: a restarted process resumed it.
                    raise InvalidStateError(f"incarnation {me.incarnation} was resumed by another process")
        raise BackendTimeoutError(f"renew of host {me.name} raced {_MAX_RACES} times")

    async def _regain(self, me: HostRecord, host_mod: int, alive_mod: int) -> None:
        """Our lease expired (we were unreachable): start a new one for the same incarnation.

        Entries taken over meanwhile stay taken; the host fenced their guests
        when its renewals stopped, as on every backend.
        """
        lease = await self.client.grant(max(1, math.ceil(self._host_dead)))
        answer = await self.client.txn(
            [mod_is(self.keys.host(me.id), host_mod), mod_is(self.keys.alive(me.id), alive_mod)],
            [
                put_op(self.keys.host(me.id), encode_host(me, lease)),
                put_op(self.keys.alive(me.id), alive_value(me.incarnation, lease), lease=lease),
            ],
            urgent=True,
        )
        if not answer.get("succeeded"):
            await self.client.revoke(lease)
            return
        self._lease, self._host_mod = lease, _revision(answer)

    async def leave(self, *, clean: bool) -> None:
        if self._host is None or self._record is None:
            return
        me, lease = self._record, self._lease
        self._host = self._record = None
        if not clean:
            return  # like a crash: the lease runs out on its own
        left = attrs.evolve(me, counter=me.counter + 1, state=HostState.LEFT)
        host_key = self.keys.host(me.id)
        with self._bounded("leave"):
            await self.client.txn(
                [mod_is(host_key, self._host_mod)], [put_op(host_key, encode_host(left, 0))]
            )
            # Entries left behind (a crash mid-release) still wait host_dead on
            # the observers' clocks: the record is LEFT, not gone.
            await self.client.revoke(lease)

    async def hosts(self) -> list[HostView]:
        read_at = self._observer.now()
        with self._bounded("hosts"):
            answer = await self.client.txn(
                success=[range_op(self.keys.hosts, prefix=True), range_op(self.keys.alive_dir, prefix=True)]
            )
        hosts, alive = self._decode_hosts(answer["responses"][0], answer["responses"][1])
        views = []
        for host_id in sorted(hosts):
            record = hosts[host_id][0]
            view = self._observer.observe(record, read_at)
            leased = record.state is HostState.LIVE and alive.get(host_id, ("", 0))[0] == record.incarnation
            views.append(attrs.evolve(view, alive=view.alive or leased))
        return views

    def _decode_hosts(
        self, hosts_range: Json, alive_range: Json
    ) -> tuple[dict[int, tuple[HostRecord, int]], dict[int, tuple[str, int]]]:
        hosts = {KeyLayout.host_id(k): (decode_host(k, v), mod) for k, v, mod in range_kvs(hosts_range)}
        alive = {KeyLayout.host_id(k): (alive_incarnation(v), mod) for k, v, mod in range_kvs(alive_range)}
        return hosts, alive

    # --- lease records -------------------------------------------------------------

    def _snapshot_ops(self, keys: Sequence[str], *, with_hosts: bool) -> list[Json]:
        ops = [range_op(self.keys.record(k)) for k in keys]
        if with_hosts:
            ops += [range_op(self.keys.hosts, prefix=True), range_op(self.keys.alive_dir, prefix=True)]
        return ops

    def _snapshot(self, keys: Sequence[str], responses: Sequence[Json], *, with_hosts: bool) -> _Snapshot:
        records: dict[str, tuple[LeaseRecord | None, int]] = {}
        for key, response in zip(keys, responses, strict=False):
            found = range_kvs(response)
            records[key] = (decode_record(key, found[0][0], found[0][1]), found[0][2]) if found else (None, 0)
        self._cache.update(records)
        if not with_hosts:
            return _Snapshot(records, {}, {})
        hosts, alive = self._decode_hosts(responses[len(keys)], responses[len(keys) + 1])
        return _Snapshot(records, hosts, alive)

    async def _read(self, keys: Sequence[str], *, with_hosts: bool) -> tuple[_Snapshot, float]:
        read_at = self._observer.now()
        answer = await self.client.txn(success=self._snapshot_ops(keys, with_hosts=with_hosts))
        return self._snapshot(keys, answer["responses"], with_hosts=with_hosts), read_at

    def _cached(self, keys: Sequence[str]) -> _Snapshot:
        """What this backend last saw of ``keys``; one it never saw is taken as absent (revision 0).

        A wrong guess costs one failed compare, whose failure branch reads the truth.
        """
        return _Snapshot({k: self._cache.get(k, (None, 0)) for k in keys}, {}, {})

    def _uncontended(self, snap: _Snapshot) -> bool:
        """No entry of another host or incarnation: nothing to judge alive or dead."""
        return all(
            h.owner.host_id == self._record_id() and h.incarnation == self._incarnation
            for record, _mod in snap.records.values()
            for h in (record.holders if record is not None else ())
        )

    def _record_id(self) -> int:
        return self._me().id

    def _holder_alive(self, snap: _Snapshot, read_at: float) -> Callable[[Holder], bool]:
        def alive(holder: Holder) -> bool:
            host_id = holder.owner.host_id
            record = snap.hosts.get(host_id)
            # Observe first, always: the observer's host_dead counts from its first look.
            watched = self._observer.holder_alive(holder, record[0] if record else None, read_at)
            leased = snap.alive.get(host_id, ("", 0))[0] == holder.incarnation
            return watched or leased  # dead only once its etcd lease is gone too

        return alive

    async def _write(
        self,
        snap: _Snapshot,
        updated: Mapping[str, LeaseRecord],
        keys: Sequence[str],
        extra: Sequence[Json],
        *,
        with_hosts: bool,
    ) -> tuple[bool, _Snapshot | None, float]:
        """Store ``updated`` if none of ``keys`` changed since ``snap``; else the fresh snapshot.

        The fresh snapshot comes from the failed txn's own reads, dated by a
        clock reading taken before the txn was sent.
        """
        compare = [mod_is(self.keys.record(k), snap.records[k][1]) for k in keys] + list(extra)
        puts = [put_op(self.keys.record(k), encode_record(r)) for k, r in sorted(updated.items())]
        read_at = self._observer.now()
        answer = await self.client.txn(compare, puts, self._snapshot_ops(keys, with_hosts=with_hosts))
        if answer.get("succeeded"):
            revision = _revision(answer)
            for key, record in updated.items():
                self._cache[key] = (record, revision)
            return True, None, read_at
        return False, self._snapshot(keys, answer["responses"], with_hosts=with_hosts), read_at

    async def acquire(self, owner: LeaseOwner, requests: Sequence[LeaseRequest]) -> tuple[Lease, ...]:
        self._me()
        keys = [r.key for r in normalize_requests(requests)]
        with self._bounded("acquire"):
            snap: _Snapshot | None = None
            cached = self._cached(keys)
            if self._uncontended(cached):
                # Only our own entries are in the way: judging them alive can
                # only refuse, and a refusal is checked on fresh records below.
                try:
                    updated, leases = plan_acquire(
                        self._plain(cached), owner, self._incarnation, requests, lambda _h: True
                    )
                except (ResourceBusyError, StaleLockStateError):
                    pass
                else:
                    done, snap, read_at = await self._write(cached, updated, keys, (), with_hosts=True)
                    if done:
                        return leases
            if snap is None:
                snap, read_at = await self._read(keys, with_hosts=True)
            for _ in range(_MAX_RACES):
                updated, leases = plan_acquire(
                    self._plain(snap), owner, self._incarnation, requests, self._holder_alive(snap, read_at)
                )
                done, fresh, read_at = await self._write(
                    snap, updated, keys, self._takeover_guards(snap, updated), with_hosts=True
                )
                if done:
                    return leases
                assert fresh is not None
                snap = fresh
        raise BackendTimeoutError(f"acquire of {', '.join(keys)} raced {_MAX_RACES} times")

    def _takeover_guards(self, snap: _Snapshot, updated: Mapping[str, LeaseRecord]) -> list[Json]:
        """Compares that keep every host whose entries we drop exactly as we judged it."""
        guards: dict[int, list[Json]] = {}
        for key, record in updated.items():
            before = snap.records[key][0]
            for holder in before.holders if before is not None else ():
                host_id = holder.owner.host_id
                if holder in record.holders or host_id in guards:
                    continue
                host_mod = snap.hosts[host_id][1] if host_id in snap.hosts else 0
                alive_mod = snap.alive[host_id][1] if host_id in snap.alive else 0
                guards[host_id] = [
                    mod_is(self.keys.host(host_id), host_mod),
                    mod_is(self.keys.alive(host_id), alive_mod),
                ]
        return [c for pair in guards.values() for c in pair]

    @staticmethod
    def _plain(snap: _Snapshot) -> dict[str, LeaseRecord]:
        return {k: r for k, (r, _mod) in snap.records.items() if r is not None}

    async def release(self, owner: LeaseOwner, keys: Sequence[str]) -> None:
        wanted = sorted(set(keys))
        if not wanted:
            return
        with self._bounded("release"):
            snap = self._cached(wanted)
            for _ in range(_MAX_RACES):
                updated = plan_release(self._plain(snap), owner, wanted)
                done, fresh, _ = await self._write(snap, updated, wanted, (), with_hosts=False)
                if done:
                    return
                assert fresh is not None
                snap = fresh
        raise BackendTimeoutError(f"release of {', '.join(wanted)} raced {_MAX_RACES} times")

    async def transfer(
        self,
        source: LeaseOwner,
        destination: LeaseOwner,
        destination_incarnation: str,
        leases: Sequence[Lease],
    ) -> tuple[Lease, ...]:
        self._me()
        keys = sorted({lease.key for lease in leases})
        with self._bounded("transfer"):
            snap, _ = await self._read(keys, with_hosts=False)
            for _ in range(_MAX_RACES):
                updated, moved = plan_transfer(
                    self._plain(snap), source, self._incarnation, destination, destination_incarnation, leases
                )
                done, fresh, _ = await self._write(snap, updated, keys, (), with_hosts=False)
                if done:
                    return moved
                assert fresh is not None
                snap = fresh
        raise BackendTimeoutError(f"transfer of {', '.join(keys)} raced {_MAX_RACES} times")

    async def records(self, keys: Sequence[str] | None = None) -> list[LeaseRecord]:
        with self._bounded("records"):
            if keys is not None:
                wanted = sorted(set(keys))
                if not wanted:
                    return []
                snap, _ = await self._read(wanted, with_hosts=False)
                return [r for k in wanted if (r := snap.records[k][0]) is not None]
            answer = await self.client.txn(success=[range_op(self.keys.records, prefix=True)])
        found = []
        for etcd_key, value, mod in range_kvs(answer["responses"][0]):
            key = self.keys.record_key(etcd_key)
            record = decode_record(key, etcd_key, value)
            self._cache[key] = (record, mod)
            found.append(record)
        return sorted(found, key=lambda r: r.key)

    async def aclose(self) -> None:
        await self.client.aclose()


def _revision(answer: Json) -> int:
    """The revision a successful write txn created: every key it put now has this mod revision."""
    return as_int(answer.get("header", {}).get("revision"))
