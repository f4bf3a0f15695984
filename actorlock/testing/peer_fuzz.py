"""Hostile frames for a host's peer socket, and a bounded run that sends them.

Used by ``tests/test_peer_fuzz_run.py`` (a short run, and a marked-slow
longer one) and ``benchmarks/bench_peer_fuzz.py`` (a million frames). The
frames come from an authenticated peer, the worst case CURVE allows: it
may name itself or others, replay, reorder and corrupt real messages.

Kinds, in a fixed rotation so every run covers all of them:

* ``random``: random bytes, short or up to 64 KiB;
* ``mutated``: a valid frame with bytes flipped, inserted, deleted, cut or appended;
* ``fields``: well-formed maps with wrong, missing or extra fields;
* ``order``: valid messages out of order: COMMIT, CANCEL, QUERY for migrations
  that do not exist or were never prepared, responses sent as requests,
  PREPAREs in the wrong lockspace, signed as another host, or offering
  leases the sender does not hold;
* ``prepare``: a valid PREPARE of the sender's real leases (each one costs the
  host a driver until it ends), then its COMMIT or CANCEL out of turn;
* ``headers``: msgpack headers that promise huge strings, arrays, maps or
  binaries, deep nesting, extension types, huge integers;
* ``oversized``: now and then a frame over the size limit (the server drops
  the connection; the client's socket reconnects by itself).
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import anyio
import attrs
import msgpack

from ..errors import ActorlockError
from ..model import DomainIdentity, Lease, LeaseMode, LockState
from ..protocol import (
    Cancel,
    CancelReply,
    Commit,
    CommitReply,
    ErrorReply,
    Message,
    Outcome,
    Prepare,
    PrepareReply,
    Query,
    Refuse,
    Request,
    Status,
)
from ..transport import codec
from ..transport.limits import LIMITS

KINDS: Final = ("random", "mutated", "fields", "order", "prepare", "headers")
OVERSIZED_EVERY: Final = 20_000  # a frame that costs the client its connection: rare


@attrs.frozen
class Target:
    """What the hostile peer knows: its own name and leases, the host's lockspace."""

    sender: str
    source_host_id: int
    lockspace_kind: str
    lockspace_id: str
    domain: DomainIdentity
    offer: LockState
    other_hosts: tuple[str, ...] = ()


@attrs.frozen
class Frame:
    kind: str
    data: bytes
    expects_reply: bool = attrs.field(
        kw_only=True
    )  # False: the host answers nothing (a response sent as a request, ...)


class HostileFrames:
    """An endless, seeded stream of hostile frames for one target."""

    def __init__(self, target: Target, seed: int) -> None:
        self.target = target
        self._rng = random.Random(seed)
        self._n = 0
        self._prepared: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        self._n += 1
        if self._n % OVERSIZED_EVERY == 0:
            return Frame(
                "oversized", self._rng.randbytes(16) * (LIMITS.message_size // 16 + 8), expects_reply=False
            )
        kind = KINDS[self._n % len(KINDS)]
        make: Callable[[], Frame] = getattr(self, f"_{kind}")
        return make()

    # -- building blocks ------------------------------------------------------------

    def _mid(self) -> str:
        rng = self._rng
        return rng.choice(["", "m", f"{rng.getrandbits(128):032x}", *self._prepared[-4:]])

    def _base(self, **over: Any) -> dict[str, Any]:
        rng = self._rng
        fields: dict[str, Any] = {
            "migration_id": self._mid(),
            "sender": rng.choice([self.target.sender, *self.target.other_hosts, "stranger"]),
            "seq": rng.choice([0, 1, 2, 7, 2**63 - 1]),
            "deadline_remaining": rng.choice([0.0, 0.5, 5.0, 3600.0, 1e12]),
        }
        fields.update(over)
        return fields

    def _lock_state(self) -> LockState:
        rng = self._rng
        offer = self.target.offer
        return rng.choice(
            [
                offer,
                LockState(),
                LockState(tuple(Lease(x.key, x.mode, x.token + 1) for x in offer.leases)),
                LockState((Lease("disk:/not/held", LeaseMode.EXCLUSIVE, 1),)),
                LockState(offer.leases + offer.leases[:1]),
            ]
        )

    def _valid(self) -> Message:
        rng = self._rng
        t = self.target
        choice = rng.randrange(10)
        if choice == 0:
            return Prepare(
                **self._base(),
                domain=t.domain,
                source_host_id=t.source_host_id,
                lockspace_kind=rng.choice([t.lockspace_kind, "file"]),
                lockspace_id=rng.choice([t.lockspace_id, "another"]),
                lock_state=self._lock_state(),
            )
        if choice == 1:
            return Commit(**self._base(), host_id=rng.randrange(1, 2001), incarnation="x")
        if choice == 2:
            return Cancel(**self._base(), reason="r" * rng.randrange(0, 50))
        if choice == 3:
            return Query(**self._base())
        if choice == 4:
            return PrepareReply(**self._base(), host_id=2, incarnation="i")
        if choice == 5:
            return Refuse(**self._base(), code="busy", message="no")
        if choice == 6:
            outcome = rng.choice(list(Outcome))
            return CommitReply(**self._base(), outcome=outcome, lock_state=self._lock_state())
        if choice == 7:
            return CancelReply(**self._base(), outcome=rng.choice(list(Outcome)))
        if choice == 8:
            return Status(**self._base(), outcome=rng.choice(list(Outcome)))
        return ErrorReply(**self._base(), code="protocol-error", message="?")

    # -- kinds ----------------------------------------------------------------------

    def _random(self) -> Frame:
        rng = self._rng
        size = rng.randrange(0, 300) if rng.random() < 0.95 else rng.randrange(300, 65536)
        return Frame("random", rng.randbytes(size), expects_reply=True)

    def _mutated(self) -> Frame:
        rng = self._rng
        data = bytearray(codec.encode(self._valid()))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(5)
            at = rng.randrange(len(data) + 1)
            if op == 0 and at < len(data):
                data[at] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at:at] = rng.randbytes(rng.randrange(1, 8))
            elif op == 2:
                del data[at : at + rng.randrange(1, 8)]
            elif op == 3:
                del data[at:]
            else:
                data += rng.randbytes(rng.randrange(1, 16))
        # A mutation can leave a valid response: the host answers nothing then.
        return Frame("mutated", bytes(data), expects_reply=False)

    def _fields(self) -> Frame:
        rng = self._rng
        body: dict[str, Any] = {"type": rng.choice([*codec.TYPES, "nonsense", 1, None])}
        body.update(self._base(version=rng.choice([1, 0, 2, "1", None])))
        junk: list[Any] = [None, True, -1, 2**64 - 1, 1.5, float("nan"), "", "x" * 300, b"\x00", [], {}]
        for _ in range(rng.randrange(1, 4)):
            name = rng.choice([*body, "lock_state", "domain", "extra", "outcome"])
            if rng.random() < 0.2:
                body.pop(name, None)
            else:
                body[name] = rng.choice(junk)
        return Frame("fields", msgpack.packb(body, use_bin_type=True), expects_reply=True)

    def _order(self) -> Frame:
        message = self._valid()
        return Frame("order", codec.encode(message), expects_reply=isinstance(message, Request))

    def _prepare(self) -> Frame:
        rng = self._rng
        t = self.target
        if self._prepared and rng.random() < 0.5:
            mid = rng.choice(self._prepared)
            envelope: dict[str, Any] = {"migration_id": mid, "sender": t.sender, "deadline_remaining": 1.0}
            message: Message = rng.choice(
                [
                    Commit(**envelope, seq=2, host_id=1, incarnation="x"),
                    Cancel(**envelope, seq=rng.choice([1, 2, 3])),
                    Query(**envelope, seq=9),
                ]
            )
            return Frame("prepare", codec.encode(message), expects_reply=True)
        mid = f"{rng.getrandbits(128):032x}"
        self._prepared = [*self._prepared[-63:], mid]
        prepare = Prepare(
            migration_id=mid,
            sender=t.sender,
            seq=1,
            deadline_remaining=3600.0,
            domain=t.domain,
            source_host_id=t.source_host_id,
            lockspace_kind=t.lockspace_kind,
            lockspace_id=t.lockspace_id,
            lock_state=t.offer,
        )
        return Frame("prepare", codec.encode(prepare), expects_reply=True)

    def _headers(self) -> Frame:
        rng = self._rng
        choice = rng.randrange(9)
        if choice == 0:
            data = b"\xdb" + struct.pack(">I", 0xFFFFFFFF) + b"abc"  # str32 of 4 GiB
        elif choice == 1:
            data = b"\xdd" + struct.pack(">I", 0xFFFFFFFF)  # array32
        elif choice == 2:
            data = b"\xdf" + struct.pack(">I", 0xFFFFFFFF)  # map32
        elif choice == 3:
            data = b"\xc6" + struct.pack(">I", 0xFFFFFFFF)  # bin32
        elif choice == 4:
            data = b"\x91" * rng.randrange(100, 100_000) + b"\xc0"  # deep nesting
        elif choice == 5:
            data = b"\xc7\x05\xff" + rng.randbytes(5)  # ext type -1 (timestamp)
        elif choice == 6:
            data = b"\xcf" + rng.randbytes(8)  # uint64 where a map belongs
        elif choice == 7:
            data = b"\x81\xa4type\xdb" + struct.pack(">I", 1 << 20) + b"x" * 16  # a field's length lies
        else:
            data = b"\xde\xff\xff" + b"\xa1k\xc0" * 10  # map16 promising 65535 entries
        return Frame("headers", data, expects_reply=True)


@attrs.define
class FuzzReport:
    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = attrs.Factory(dict)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


async def send_frames(
    request: Callable[[bytes], Any],
    frames: Iterator[Frame],
    count: int,
    *,
    workers: int = 16,
    reply_timeout: float = 2.0,
    no_reply_wait: float = 0.005,
) -> FuzzReport:
    """Send ``count`` frames through ``request`` (a PeerClient's), ``workers`` at a time.

    Bounded: it stops after ``count`` frames, and each waits at most
    ``reply_timeout`` (``no_reply_wait`` when no answer is expected).
    """
    report = FuzzReport()
    left = count
    start = anyio.current_time()

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            frame = next(frames)
            report.by_kind[frame.kind] = report.by_kind.get(frame.kind, 0) + 1
            report.sent += 1
            with anyio.move_on_after(reply_timeout if frame.expects_reply else no_reply_wait):
                with contextlib.suppress(ActorlockError):  # a failure reply is an answer too
                    await request(frame.data)
                report.answered += 1
                continue
            report.unanswered += 1

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    report.seconds = anyio.current_time() - start
    return report


# --- a run against a real host -----------------------------------------------------------

UUID: Final = "f022ed00-0000-4000-8000-00000000f022"
DISKS: Final = ("/fuzz/root.img", "/fuzz/data.img")


def host_settings(name: str, host_id: int, lockspace: str, **peer: Any) -> dict[str, Any]:
    """A host on a memory lockspace with timing that a loaded event loop cannot break.

    Renewals every 0.5 s with 3 s of lease: a fuzzing run keeps the loop
    busy, and a missed renewal would fence the guest (a state change not
    caused by any frame). Pending migrations expire after 1.5 s.
    """
    return {
        "host": {"name": name, "id": host_id},
        "timing": {
            "renew_interval": 0.5,
            "lease_timeout": 3.0,
            "fence_timeout": 1.0,
            "host_dead": 5.0,
            "io_timeout": 2.0,
        },
        "locking": {"backend": "memory", "kill_grace": 0.5},
        "memory": {"lockspace": lockspace},
        "peer": {
            "endpoint": "tcp://127.0.0.1:*",
            "prepare_timeout": 0.5,
            "migration_timeout": 1.0,
            "transfer_margin": 0.3,
            **peer,
        },
    }


def rss_kib() -> int:
    """This process's resident set now (Linux), in KiB."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@attrs.frozen
class FuzzOutcome:
    report: FuzzReport
    stranger_frames: int
    leases_before: tuple[tuple[str, tuple[tuple[str, int, str], ...]], ...]
    leases_after: tuple[tuple[str, tuple[tuple[str, int, str], ...]], ...]
    incoming_after: int  # incoming migrations the target still had when the run ended
    domains_after: tuple[str, ...]  # domain actors the target runs after the run
    losses: int  # lockspace losses of either host during the run
    renewals: int  # the target's successful renewals during the run
    migrated_after: bool  # a real migration went through afterwards
    rss_start_kib: int
    rss_warm_kib: int
    rss_end_kib: int


def _snapshot(records: list[Any]) -> tuple[tuple[str, tuple[tuple[str, int, str], ...]], ...]:
    return tuple(
        (r.key, tuple(sorted((h.owner.host, h.token, h.mode.value) for h in r.holders))) for r in records
    )


async def fuzz_real_host(
    count: int,
    *,
    seed: int,
    key_dir: Any,
    guest_pid: int,
    workers: int = 16,
    progress: Callable[[int], None] | None = None,
) -> FuzzOutcome:
    """Start hosts a (the hostile peer's identity) and b (the target), CURVE on, and fuzz b.

    The hostile peer signs with a's own key, so b authenticates it as a host
    of the lockspace: the worst a peer can be. A stranger whose key b does not
    allow tries too. Bounded: ``count`` frames, then bounded waits.
    """
    import uuid as uuidlib
    from pathlib import Path

    from ..api import open_host
    from ..model import disk
    from ..transport.zmq import KeyPair, connect, generate_keypair, save_keypair

    keys = {name: KeyPair(*generate_keypair()) for name in ("a", "b", "stranger")}
    files = {}
    for name, pair in keys.items():
        files[name] = Path(key_dir) / f"{name}.key"
        save_keypair(files[name], pair)
    space = f"fuzz-{uuidlib.uuid4().hex[:10]}"
    curve = {"plaintext": False, "allowed_keys": [keys["a"].public, keys["b"].public]}
    cfg_a = host_settings("a", 1, space, key_file=str(files["a"]), **curve)
    cfg_b = host_settings("b", 2, space, key_file=str(files["b"]), **curve)
    rss_start = rss_kib()
    async with open_host(cfg_a) as a, open_host(cfg_b) as b:
        vm = a.domain(UUID, name="vm")
        await vm.start([disk(p) for p in DISKS], pid=guest_pid)
        before = _snapshot(await a.leases())
        target = Target(
            sender="a",
            source_host_id=1,
            lockspace_kind=b.backend_kind,
            lockspace_id=b.lockspace_id,
            domain=DomainIdentity(UUID, "vm"),
            offer=LockState(
                tuple(Lease(r.key, h.mode, h.token) for r in await a.leases() for h in r.holders)
            ),
            other_hosts=("b",),
        )
        frames = HostileFrames(target, seed)
        endpoint = b.peer_endpoint
        server_key = keys["b"].public
        losses0 = a.lockspace_losses + b.lockspace_losses
        renewals0 = (await b.status()).renewals
        stranger_frames = 0
        async with (
            connect(endpoint, server_key=server_key, keys=keys["a"]) as client,
            connect(endpoint, server_key=server_key, keys=keys["stranger"]) as stranger,
        ):
            warm = max(1, count // 10)
            report = await send_frames(client.request, frames, warm, workers=workers)
            rss_warm = rss_kib()
            done = warm
            step = max(1, min(50_000, count // 20))
            while done < count:
                part = await send_frames(client.request, frames, min(step, count - done), workers=workers)
                report = _merged(report, part)
                done += part.sent
                stranger_frames += 1
                with anyio.move_on_after(0.05):  # never admitted: its handshake is refused
                    await stranger.request(next(frames).data)
                if progress is not None:
                    progress(done)

        # Every pending incoming migration ends by prepare + migration timeout, plus its
        # linger; a mutated PREPARE may name another domain, so watch them all.
        def incoming() -> int:
            return len(b.incoming_migrations())

        with anyio.move_on_after(15.0):
            while incoming():  # noqa: ASYNC110
                await anyio.sleep(0.1)
        incoming_after = incoming()
        after = _snapshot(await a.leases())
        domains_after = tuple(b.known_domains())
        losses = a.lockspace_losses + b.lockspace_losses - losses0
        renewals = (await b.status()).renewals - renewals0
        rss_end = rss_kib()
        migrated = await _migrate(vm, b, guest_pid)
    return FuzzOutcome(
        report=report,
        stranger_frames=stranger_frames,
        leases_before=before,
        leases_after=after,
        incoming_after=incoming_after,
        domains_after=domains_after,
        losses=losses,
        renewals=renewals,
        migrated_after=migrated,
        rss_start_kib=rss_start,
        rss_warm_kib=rss_warm,
        rss_end_kib=rss_end,
    )


def _merged(one: FuzzReport, two: FuzzReport) -> FuzzReport:
    kinds = dict(one.by_kind)
    for kind, n in two.by_kind.items():
        kinds[kind] = kinds.get(kind, 0) + n
    return FuzzReport(
        sent=one.sent + two.sent,
        answered=one.answered + two.answered,
        unanswered=one.unanswered + two.unanswered,
        seconds=one.seconds + two.seconds,
        by_kind=kinds,
    )


async def _migrate(vm: Any, b: Any, guest_pid: int) -> bool:
    """A real migration a -> b: the target still does its job."""
    from ..model import disk

    await vm.prepare_migration(b.peer_endpoint)
    incoming = b.domain(UUID, name="vm")
    resources = [disk(p) for p in DISKS]
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(vm.complete_migration, commit=True))
        tg.start_soon(partial(incoming.complete_migration, commit=True, resources=resources, pid=guest_pid))
    holders = {h.owner.host for r in await b.leases() for h in r.holders}
    return holders == {"b"}
